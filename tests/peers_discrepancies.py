"""The peers' Voronoi losses, for tests only: CRPE-SGaME's copied, CRPE-GMoE's loaded.

* ``loss_SGaME_exact`` and ``gauss_dist_SGaME`` below are copied verbatim (with their
  ``rbar``) from discrepancies.py of GitHub Trung-TinNGUYEN/CRPE-SGaME at commit
  53c4234cdc8355f4878f1944fdff8cae92a6b6f3, under its MIT licence, reproduced here:

      MIT License

      Copyright (c) 2022 Tudor Manole

      Permission is hereby granted, free of charge, to any person obtaining a copy
      of this software and associated documentation files (the "Software"), to deal
      in the Software without restriction, including without limitation the rights
      to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
      copies of the Software, and to permit persons to whom the Software is
      furnished to do so, subject to the following conditions:

      The above copyright notice and this permission notice shall be included in all
      copies or substantial portions of the Software.

      THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
      IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
      FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
      AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
      LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
      OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
      SOFTWARE.

* CRPE-GMoE (GitHub Trung-TinNGUYEN/CRPE-GMoE) carries no licence file, so its code is not
  copied here: :func:`load_gmoe` reads discrepancies.py (and models.py) from a local clone at
  test time, ``$CRPE_GMOE_REPO`` or the mirror /work/.mirror/Trung-TinNGUYEN+CRPE-GMoE/repo
  (a git directory: files are read with ``git show HEAD:<path>``, or from a work tree), and
  returns None when neither is there; the tests that need it then skip.
"""
import os
import subprocess

import numpy as np

GMOE_MIRROR = "/work/.mirror/Trung-TinNGUYEN+CRPE-GMoE/repo"


def read_gmoe_file(path):
    """The text of a file of the CRPE-GMoE clone, or None when no clone is found."""
    root = os.environ.get("CRPE_GMOE_REPO", GMOE_MIRROR)
    if os.path.isfile(os.path.join(root, path)):
        with open(os.path.join(root, path)) as f:
            return f.read()
    if not os.path.isdir(root):
        return None
    try:
        return subprocess.run(["git", "-C", root, "show", f"HEAD:{path}"], check=True,
                              capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def load_gmoe():
    """CRPE-GMoE's discrepancies.py as a namespace (gauss_loss_GLLiM1, gauss_loss_GLLiM2, ...),
    or None."""
    text = read_gmoe_file("discrepancies.py")
    if text is None:
        return None
    namespace = {"__name__": "crpe_gmoe_discrepancies"}
    exec(compile(text, "CRPE-GMoE/discrepancies.py", "exec"), namespace)
    return namespace


def load_gmoe_model(model):
    """get_params(n) of CRPE-GMoE's models.py for model 1..4, or None."""
    text = read_gmoe_file("models.py")
    if text is None:
        return None
    namespace = {"np": np, "model": model, "sys": __import__("sys")}
    exec(compile(text, "CRPE-GMoE/models.py", "exec"), namespace)
    return namespace["get_params"]


# ---- CRPE-SGaME discrepancies.py, verbatim (MIT licence above) ----


rbar = [0,1,4,6] # cf. Lemma 1 in main text.

# Exact-fitted Settings
def loss_SGaME_exact(betas, As, Sigmas, beta, A, Sigma):
    
    # ####For debugging purposes
    # it = 0
    # jt = 0
    # beta = beta_list[it,jt,:,:]
    # A = A_list[it,jt,:,:]
    # Sigma = Sigma_list[it,jt,:,:]
    
    # ## Model 3. Hope with these seperation clusters.
    # betas   = np.array([[-7,0], [15,0]]) # [(d+1)xK]
    # As      = np.array([[2, 2], [-15,1]]) # [(d+1)xK]
    # Sigmas  = np.array([[0.3, 0.4]])**2 # [1xK]
    # print('beta = \n', beta, '\n betas = \n', betas, \
    #       '\n A = \n', A, '\n As = \n' , As, '\n Sigma = \n', Sigma,  '\n Sigmas = \n', Sigmas)
    ## Results:
    # beta = 
    #  [[-7.00032931 -7.00086037  0.        ]
    #  [14.99967069 14.99913963  0.        ]] 
    #  betas = 
    #  [[-7  0]
    #  [15  0]] 
    #  A = 
    #  [[  1.94282045   2.20693594   2.00933962]
    #  [-14.75452282 -15.49418917   0.86850571]] 
    #  As = 
    #  [[  2   2]
    #  [-15   1]] 
    #  Sigma = 
    #  [[0.0634427  0.03349318 0.13712274]] 
    #  Sigmas = 
    #  [[0.09 0.16]]
    
    Ks = betas.shape[1] # Ks =2
    K  = beta.shape[1]  # K = 3
    
    D = np.empty((K,Ks))

    for i in range(K):
        for j in range(Ks):
            # ## Testing
            # i = 0
            # j= 0
            # print('beta = \n', beta[:,j], '\n betas = \n', betas[:,j], \
            #       '\n A = \n', A[:,i], '\n As = \n' , As[:,i], '\n Sigma = \n', Sigma[:,i],  '\n Sigmas = \n', Sigmas[:,j])
            ## Results:
            # beta = 
            #  [-7.00032931 14.99967069] 
            #  betas = 
            #  [-7 15] 
            #  A = 
            #  [  1.94282045 -14.75452282] 
            #  As = 
            #  [  2 -15] 
            #  Sigma = 
            #  [0.0634427] 
            #  Sigmas = 
            #  [0.09]    
            D[i,j] = gauss_dist_SGaME(betas[:,j], As[:,j], Sigmas[:,j],\
                                      beta[:,i], A[:,i], Sigma[:,i])
            ## Results:
            #D[i,j]
            #Out[391]: 0.329543339434129
    # ### Result for D
    # array([[ 0.32954334,  2.20693594],
    #        [ 2.00933962, 14.75452282],
    #        [15.49418917,  0.86850571]])
    
    vor=[]
    for i in range(K):
        for j in range(Ks):
            if D[i,j] == np.min(D[i,:]):
                vor.append(j)
    # ## Results:
    # vor
    # Out[405]: [0, 0, 1]
    
    unique, counts = np.unique(vor, return_counts=True)
    # print(unique)
    # print(counts)
    summ = 0.0
    if (Ks==K):
        for i in range(K):
            # # ## Testing
            # i = 0
            # j= 0
            j = vor[i]
            if counts[vor[i]] == 1:
                summ += np.exp(beta[0,i]) * D[i,vor[i]]
    else:
        for i in range(K):
            j = vor[i]
            if counts[vor[i]] == 1:
                summ += np.exp(beta[0,i]) * D[i,vor[i]] 
                
            else:
                # ## Testing.
                ## To do: modified beta1_dist--Sigma_dist
                # i = 0
                j = vor[i]
                rb = rbar[counts[j]]
                beta1_dist = (np.linalg.norm(beta[1,i]-betas[1,j]))**rb  ## Previous error here! betas[1,j] not betas[1,:]?
                b_dist = (np.linalg.norm(A[0,i] - As[0,j]))**rb
                # print(beta1_dist + b_dist)
                A_dist = (np.linalg.norm(A[1,i] - As[1,j]))**(rb/2.0)
                Sigma_dist = (np.linalg.norm(Sigma[:,i] - Sigmas[:,j]))**(rb/2.0)
                
                summ += np.exp(beta[0,i]) * (beta1_dist + b_dist + A_dist + Sigma_dist)

    for j in range(Ks):
        exp_beta0 = 0

        for i in range(K):
            if vor[i] == j:
                exp_beta0 += np.exp(beta[0,i])

        summ += np.abs(exp_beta0 - np.exp(betas[0,j]))

    return summ

def gauss_dist_SGaME(betas, As, Sigmas, beta, A, Sigma):
    return np.linalg.norm(betas[1] - beta[1]) + np.linalg.norm(As[0]-A[0]) \
            + np.linalg.norm(As[1]-A[1]) + np.linalg.norm(Sigmas-Sigma)


